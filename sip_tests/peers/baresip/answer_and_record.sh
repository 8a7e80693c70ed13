#!/usr/bin/env bash
# A headless baresip callee on loopback: answers the first call at once (answermode=auto),
# records what it hears until the far end hangs up, then exits.
#
#   answer_and_record.sh SIP_PORT OUT.wav SECONDS
#
# Listens on 127.0.0.1:SIP_PORT (UDP); prints "ready" on stdout once listening. OUT.wav gets the
# decoded received audio (8 kHz, 16-bit, mono). Gives up SECONDS after start. Exit: 0 answered
# and recorded, 2 usage, 3 never called/answered, 4 answered but nothing recorded.
# Environment: BARESIP_RTP_PORTS (default 30200-30300), KEEP_TMP=1 (keep the work dir).
set -u
[ $# -eq 3 ] || { echo "usage: $0 SIP_PORT OUT.wav SECONDS" >&2; exit 2; }
sip_port=$1 out=$2 secs=$3
work=$(mktemp -d /tmp/answer-and-record.XXXXXX)
trap '[ "${KEEP_TMP:-0}" = 1 ] && echo "kept $work" >&2 || rm -rf "$work"' EXIT
mkdir -p "$work"
src=$work/silence.wav
sox -q -n -r 8000 -c 1 -b 16 -e signed-integer "$src" trim 0 "$(( ${secs%.*} + 5 ))"
. "$(dirname "$0")/config.sh"
baresip_config "$work" "$sip_port" "${BARESIP_RTP_PORTS:-30200-30300}" "$src" "<sip:callee@127.0.0.1>;answermode=auto"
log=$work/baresip.log
baresip -f "$work/conf" -t "$(( ${secs%.*} + 5 ))" </dev/null >"$log" 2>&1 &
pid=$!
for _ in $(seq 50); do grep -q -i "listening\|baresip is ready" "$log" && break; sleep 0.1; done
echo ready
t0=$(date +%s)
while kill -0 "$pid" 2>/dev/null; do
  if grep -q -E 'terminated \(duration|session closed|Call failed' "$log"; then
    sleep 0.3; kill -TERM "$pid" 2>/dev/null; break
  fi
  [ $(( $(date +%s) - t0 )) -ge "$secs" ] && { kill -TERM "$pid" 2>/dev/null; break; }
  sleep 0.1
done
wait "$pid" 2>/dev/null
grep -E 'Incoming call|Call established|terminated|Call failed' "$log" >&2
grep -q 'Call established' "$log" || { echo "answer_and_record: no call answered" >&2; tail -n 30 "$log" >&2; exit 3; }
rec=$(ls "$work"/dump/dump-*-dec.wav 2>/dev/null | head -n 1)
[ -n "$rec" ] || { echo "answer_and_record: nothing was recorded" >&2; exit 4; }
mv "$rec" "$out"
echo "answer_and_record: wrote $out" >&2
