#!/usr/bin/env bash
# sip_load.py on the GPU machine's 16 idle cores: the new tree (this one) and older trees
# (OLD="dir ...", clean exports of earlier commits) in one call, so they share a quiet host.
# SIPp and tcpdump are not on that image: they travel in .sipbench/ (this machine's binaries and
# their libraries, run through the bundled loader), with the server's wheels.
# (tcpdump runs with -Z root there: that image has no tcpdump user to drop to)
#   carry: [".sipbench", ".old15", ".ref15"]; COMMIT=<sha> OLD=".old15 .ref15" [OUTBOUND=1] bash benchmarks/device_sip_load.sh
# .sipbench is made by benchmarks/make_sipbench.sh; .old15 etc. by `git archive <commit> | tar -x -C .old15`.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --upgrade --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .sipbench/whl/*.whl
export PYTHONPATH=/tmp/site PATH="$PWD/.sipbench/bin:$PATH"
ARGS=${ARGS:---start 200 --factor 1.5 --seconds 5 --max-rate 3000}
NEW=$PWD
cp .sipbench/prompt.ulaw sip_tests/peers/sipp/  # made by make_prompt.sh here (no espeak-ng/sox there)
export PEERS_DIR=$NEW/sip_tests/peers
(PYTHONPATH=/tmp/site:$NEW python3 benchmarks/sip_load.py $ARGS --out $OUT/new) > $OUT/new.log 2>&1
echo "new rc=$?"; tail -3 $OUT/new.log
SIDES=new
if [ "${OUTBOUND:-0}" = 1 ]; then  # outbound calls through a trunk to SIPp's UAS, same quiet host
  (PYTHONPATH=/tmp/site:$NEW python3 benchmarks/outbound_load.py ${OUTBOUND_ARGS:---start 100 --factor 2 --max-rate 1600} \
     --out $OUT/outbound) > $OUT/outbound.log 2>&1
  echo "outbound rc=$?"; tail -3 $OUT/outbound.log; SIDES="$SIDES outbound"
fi
for old in ${OLD:-.old15}; do
  side=$(basename $old); side=${side#.}; SIDES="$SIDES $side"
  dir=/tmp/$side; rm -rf $dir; cp -r $old $dir
  # the same benchmark script and peer kit drive every server
  cp benchmarks/sip_load.py benchmarks/hostload.py $dir/benchmarks/; cp sip_tests/pcap.py $dir/sip_tests/
  (cd $dir && PYTHONPATH=/tmp/site:$dir python3 benchmarks/sip_load.py $ARGS --no-reference --out $OUT/$side) > $OUT/$side.log 2>&1
  echo "$side rc=$?"; tail -3 $OUT/$side.log
done
echo "commit new=${COMMIT:-?} cores=$(nproc) load=$(cat /proc/loadavg)" > $OUT/meta.txt
cd $OUT && tar czf /tmp/sipload.tgz $SIDES *.log meta.txt && rm -rf ./* && mv /tmp/sipload.tgz $OUT/  # one file back (8 at most come back)
