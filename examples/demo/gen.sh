#!/bin/sh
# A load generator in shell (busybox): GETs a URL at a steady rate for a
# while and reports each request to statsd ($STATSD_HOST:$STATSD_PORT, TCP).
# Usage: gen.sh URL [REQUESTS_PER_SECOND] [SECONDS]
# DELAY_MS (optional) adds that many milliseconds to each request: a slower path,
# to see a comparison with an earlier run show the regression.
url="${1:?usage: gen.sh URL [REQUESTS_PER_SECOND] [SECONDS]}"
rate="${2:-10}"
seconds="${3:-30}"
prefix="${STATSD_PREFIX:-demo.shell}"

# Milliseconds from /proc/uptime (busybox date has no %N); resolution 10 ms.
now_ms() {
  read -r up _ < /proc/uptime
  cs=${up#*.}
  cs=${cs#0}
  echo $(( ${up%.*} * 1000 + ${cs:-0} * 10 ))
}

end=$(( $(date +%s) + seconds ))
sent=0
failed=0
while [ "$(date +%s)" -lt "$end" ]; do
  second=$(date +%s)
  batch=""
  i=0
  while [ "$i" -lt "$rate" ]; do
    t0=$(now_ms)
    if wget -q -O /dev/null "$url"; then
      status=ok
    else
      status=error
      failed=$((failed + 1))
    fi
    [ "${DELAY_MS:-0}" -gt 0 ] && usleep $(( DELAY_MS * 1000 ))
    ms=$(( $(now_ms) - t0 ))
    sent=$((sent + 1))
    batch="${batch}${prefix}.requests:1|c|#status:${status}
${prefix}.latency:${ms}|ms
"
    i=$((i + 1))
  done
  printf '%s' "$batch" | nc -w 2 "$STATSD_HOST" "$STATSD_PORT" || echo "statsd unreachable" >&2
  while [ "$(date +%s)" -eq "$second" ]; do usleep 20000; done
done
echo "requests=$sent failed=$failed"
[ "$failed" -eq 0 ]
