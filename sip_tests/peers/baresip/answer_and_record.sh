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
mkdir -p "$work/conf" "$work/dump"
src=$work/silence.wav
sox -q -n -r 8000 -c 1 -b 16 -e signed-integer "$src" trim 0 "$(( ${secs%.*} + 5 ))"
echo "<sip:callee@127.0.0.1>;regint=0;answermode=auto;audio_codecs=PCMU/8000/1" > "$work/conf/accounts"
: > "$work/conf/contacts"
cat > "$work/conf/config" <<CONF
poll_method epoll
sip_listen 127.0.0.1:$sip_port
net_interface 127.0.0.1
call_max_calls 1
audio_source aufile,$src
audio_player aubridge,play
audio_alert aubridge,alert
ausrc_srate 8000
auplay_srate 8000
ausrc_channels 1
auplay_channels 1
audio_buffer 20-160
rtp_ports ${BARESIP_RTP_PORTS:-30200-30300}
rtcp_mux no
jitter_buffer_delay 5-10
module_path /usr/lib/baresip/modules
module g711.so
module aufile.so
module aubridge.so
module sndfile.so
module_tmp account.so
module_app menu.so
snd_path $work/dump
CONF
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
