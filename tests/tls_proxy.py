#!/usr/bin/env python3
"""A TLS front for a plain-HTTP server on loopback, for the TLS tests.

Usage: tls_proxy.py CERT KEY TARGET_PORT [HOST [PORT]]
Listens on HOST (127.0.0.1 by default; a test's own Docker network's gateway
for relays to reach) and PORT (a free one by default), printed as
`listening PORT` on stdout,
terminates TLS with CERT and KEY, and carries each connection's bytes to
127.0.0.1:TARGET_PORT and back. Runs until it is killed.
"""
import socket
import ssl
import sys
import threading


def pump(source, sink):
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(conn, context, target):
    try:
        tls = context.wrap_socket(conn, server_side=True)
    except (ssl.SSLError, OSError):
        conn.close()
        return
    try:
        upstream = socket.create_connection(("127.0.0.1", target), timeout=30)
    except OSError:
        tls.close()
        return
    threading.Thread(target=pump, args=(upstream, tls), daemon=True).start()
    pump(tls, upstream)


def main():
    cert, key, target = sys.argv[1], sys.argv[2], int(sys.argv[3])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.socket()
    host = sys.argv[4] if len(sys.argv) > 4 else "127.0.0.1"
    port = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    listener.bind((host, port))
    listener.listen(64)
    print(f"listening {listener.getsockname()[1]}", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn, context, target), daemon=True).start()


if __name__ == "__main__":
    main()
