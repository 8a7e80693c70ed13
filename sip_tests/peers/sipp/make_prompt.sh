#!/usr/bin/env bash
# Writes sipp/prompt.ulaw: about 6 s of speech as headerless 8 kHz mu-law, what SIPp's
# rtp_stream action plays (it would send a WAV header as if it were audio).
set -euo pipefail
dir=$(cd "$(dirname "$0")" && pwd)
wav=$(mktemp --suffix=.wav)
trap 'rm -f "$wav"' EXIT
espeak-ng -w "$wav" "This is the reference far end. It counts: one, two, three, four, five, six, seven."
sox -q "$wav" -r 8000 -c 1 -e mu-law -t raw "$dir/prompt.ulaw"
