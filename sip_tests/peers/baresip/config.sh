# Sourced by call_and_record.sh and answer_and_record.sh: a headless baresip's config on loopback.
#
#   baresip_config WORK SIP_PORT RTP_PORTS SRC_WAV ACCOUNT [EXTRA_LINES]
#
# No sound card: aufile plays SRC_WAV as the microphone, aubridge is the player, and sndfile dumps
# the decoded received stream as WORK/dump/dump-<time>-dec.wav (net_interface must be an address
# in baresip 1.0). PCMU only (baresip adds telephone-event itself); ACCOUNT is the accounts
# line's address and parameters.
baresip_config() {
  local work=$1 sip_port=$2 rtp_ports=$3 src=$4 account=$5 extra=${6:-}
  mkdir -p "$work/conf" "$work/dump"
  echo "$account;regint=0;audio_codecs=PCMU/8000/1" > "$work/conf/accounts"
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
rtp_ports $rtp_ports
rtcp_mux no
rtp_stats yes
jitter_buffer_delay 5-10
module_path /usr/lib/baresip/modules
module g711.so
module aufile.so
module aubridge.so
module sndfile.so
module_tmp account.so
module_app menu.so
snd_path $work/dump
$extra
CONF
}
