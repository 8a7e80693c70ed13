#!/usr/bin/env bash
# The repository's test peers: apt-installs every package named in debs-*.txt beside this
# script (or only the packages given as arguments), then makes the SIPp reference prompt.
#   install.sh              everything the tests need
#   install.sh sip-tester   just these packages (what `make run` needs for the README's "Try it")
# Idempotent (apt runs only for a missing package) and quiet unless something fails.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

if [ $# -gt 0 ]; then
  wanted=("$@")
else
  mapfile -t wanted < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' "$here"/debs-*.txt | grep -v '^$' | sort -u)
fi
missing=()
for pkg in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install.sh: missing Debian packages: ${missing[*]} (run as root, or install them yourself)" >&2
    exit 1
  fi
  out=$(mktemp)
  trap 'rm -f "$out"' EXIT
  # tshark's package asks whether non-root users may capture: no questions here.
  if ! DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 update -qq >"$out" 2>&1 ||
     ! DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 install -y -qq \
         --no-install-recommends "${missing[@]}" >>"$out" 2>&1; then
    cat "$out" >&2
    echo "install.sh: apt-get failed for: ${missing[*]}" >&2
    exit 1
  fi
fi

# The reference UAS (sipp/uas_pcmu.xml, used by benchmarks/sip_load.py) streams a raw mu-law prompt.
if [ $# -eq 0 ] && [ ! -s "$here/sipp/prompt.ulaw" ]; then
  "$here/sipp/make_prompt.sh"
fi
