#!/usr/bin/env bash
# A headless baresip caller on loopback: dials URI, records what it hears, hangs up.
#
#   call_and_record.sh URI OUT.wav SECONDS
#
# OUT.wav gets the decoded audio received from the far end (8 kHz, 16-bit, mono). The call
# ends SECONDS after the answer (our BYE), or earlier when the far end hangs up or refuses.
# baresip's call log lines go to stderr. Exit: 0 answered and recorded, 2 usage,
# 3 never answered, 4 answered but nothing recorded.
#
# Environment: SRC_WAV (8 kHz mono s16 WAV to send; default silence), BARESIP_SIP_PORT,
# BARESIP_CTRL_PORT (ctrl_tcp, for sending DTMF), BARESIP_RTP_PORTS (default 30000-30100),
# SETUP_TIMEOUT (seconds to wait for the answer, default 15), KEEP_TMP=1 (keep the work dir),
# BARESIP_ACCOUNT_PARAMS (appended to the account, e.g. ";mediaenc=srtp-mand"),
# BARESIP_EXTRA_CONFIG (lines appended to the config, e.g. "module srtp.so" or "sip_cafile ...").
set -u
[ $# -eq 3 ] || { echo "usage: $0 URI OUT.wav SECONDS" >&2; exit 2; }
uri=$1 out=$2 secs=$3
work=$(mktemp -d /tmp/call-and-record.XXXXXX)
trap '[ "${KEEP_TMP:-0}" = 1 ] && echo "kept $work" >&2 || rm -rf "$work"' EXIT

port() {  # a port the kernel has free on 127.0.0.1: port udp|tcp
  python3 -c 'import socket,sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if sys.argv[1] == "udp" else socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' "$1"
}
sip_port=${BARESIP_SIP_PORT:-$(port udp)}
ctrl_port=${BARESIP_CTRL_PORT:-$(port tcp)}
setup=${SETUP_TIMEOUT:-15}
src=${SRC_WAV:+$(readlink -f "$SRC_WAV")}
if [ -z "$src" ]; then  # silence for the whole call: aufile stops the source at the file's end
  mkdir -p "$work"
  src=$work/silence.wav
  sox -q -n -r 8000 -c 1 -b 16 -e signed-integer "$src" trim 0 "$(( ${secs%.*} + 10 ))"
fi

# No registration. ctrl_tcp takes commands (DTMF); the INVITE gives up after 30 s.
. "$(dirname "$0")/config.sh"
baresip_config "$work" "$sip_port" "${BARESIP_RTP_PORTS:-30000-30100}" "$src" \
  "<sip:tester@127.0.0.1>${BARESIP_ACCOUNT_PARAMS:-}" "call_local_timeout 30
module_app ctrl_tcp.so
ctrl_tcp_listen 127.0.0.1:$ctrl_port
${BARESIP_EXTRA_CONFIG:-}"

log=$work/baresip.log
# -t ends baresip in any case; the loop below hangs up on time.
baresip -f "$work/conf" -e "/dial $uri" -t "$(( ${secs%.*} + setup + 10 ))" </dev/null >"$log" 2>&1 &
pid=$!
echo "baresip pid=$pid sip=127.0.0.1:$sip_port ctrl_tcp=127.0.0.1:$ctrl_port" >&2

hang_up() {  # SIGTERM sends BYE; a second one makes baresip leave a pending INVITE at once
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -TERM "$pid" 2>/dev/null
}
now() { date +%s%N; }
t0=$(now) answered=0
while kill -0 "$pid" 2>/dev/null; do
  if grep -q -E 'terminated \(duration|Call failed|SIP Error|session closed' "$log"; then
    sleep 0.3; hang_up; break                              # the far end ended it
  fi
  [ "$answered" = 0 ] && grep -q 'Call established' "$log" && answered=$(now)
  if [ "$answered" != 0 ]; then
    [ $(( ($(now) - answered) / 1000000 )) -ge "$(awk -v s="$secs" 'BEGIN{printf "%d", s*1000}')" ] && { hang_up; break; }
  elif [ $(( ($(now) - t0) / 1000000000 )) -ge "$setup" ]; then
    hang_up; break                                         # nobody answered
  fi
  sleep 0.1
done
wait "$pid" 2>/dev/null

grep -E 'Call established|terminated|Call failed|packets:|Receive|errors:' "$log" >&2
if ! grep -q 'Call established' "$log"; then
  echo "call_and_record: the call was not answered" >&2; tail -n 30 "$log" >&2; exit 3
fi
rec=$(ls "$work"/dump/dump-*-dec.wav 2>/dev/null | head -n 1)
[ -n "$rec" ] || { echo "call_and_record: nothing was recorded" >&2; exit 4; }
mv "$rec" "$out"
echo "call_and_record: wrote $out" >&2
