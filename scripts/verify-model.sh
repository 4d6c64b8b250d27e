#!/usr/bin/env bash
# Check model/ring.pml with SPIN: every property must hold on the correct model (0 errors) and every
# broken variant must fail (errors >= 1, a trail left). Exit 0 only when both are true.
# Needs spin and gcc. Works in a temp dir (pan writes files); KEEP_MODEL_DIR=1 keeps it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
model="$root/model/ring.pml"
for tool in spin gcc; do
  command -v "$tool" >/dev/null || { echo "verify-model: $tool is not installed" >&2; exit 2; }
done
work="$(mktemp -d)"
[[ "${KEEP_MODEL_DIR:-}" == 1 ]] && echo "verify-model: working in $work" || trap 'rm -rf "$work"' EXIT
failures=0
printf '%-22s %-34s %-6s %-9s %12s %8s\n' property variant expect result states seconds
# run NAME DEFINES MODE EXPECT: MODE is safety (assertions + invalid end states), hostile (assertions only)
# or an LTL claim name (acceptance cycles under weak fairness). EXPECT is pass or fail.
run() {
  local name="$1" defines="$2" mode="$3" expect="$4"
  local dir="$work/$name.${defines// /_}"
  mkdir -p "$dir" && cp "$model" "$dir/ring.pml"
  local out
  (
    cd "$dir"
    # shellcheck disable=SC2086
    spin -a $defines ring.pml >spin.log 2>&1
    case "$mode" in
      safety) gcc -O2 -DSAFETY -DNOCLAIM -o pan pan.c && ./pan -m200000 >pan.log 2>&1 ;;
      hostile) gcc -O2 -DSAFETY -DNOCLAIM -o pan pan.c && ./pan -m200000 -E >pan.log 2>&1 ;;
      *) gcc -O2 -o pan pan.c && ./pan -m200000 -a -f -N "$mode" >pan.log 2>&1 ;;
    esac
  ) || true
  out="$dir/pan.log"
  local errors states secs result
  errors="$(sed -n 's/.*errors: \([0-9]*\).*/\1/p' "$out" | head -1)"
  states="$(sed -n 's/^ *\([0-9.e+]*\) states, stored.*/\1/p' "$out" | head -1)"
  secs="$(sed -n 's/^pan: elapsed time \([0-9.e+]*\).*/\1/p' "$out" | head -1)"
  if [[ -z "$errors" ]]; then
    result=broken
  elif grep -q "search not completed\|max search depth too small" "$out"; then
    result=incomplete
  elif [[ "$errors" == 0 ]]; then
    result=holds
  elif [[ -f "$dir/ring.pml.trail" ]]; then
    result=fails
  else
    result=no-trail
  fi
  local ok=0
  [[ "$expect" == pass && "$result" == holds ]] && ok=1
  [[ "$expect" == fail && "$result" == fails ]] && ok=1
  [[ "$ok" == 1 ]] || failures=$((failures + 1))
  printf '%-22s %-34s %-6s %-9s %12s %8s%s\n' "$name" "${defines:-correct}" "$expect" "$result" \
    "${states:-?}" "${secs:-?}" "$([[ "$ok" == 1 ]] || echo "  <-- unexpected (see $out)")"
  if [[ "$ok" != 1 ]]; then
    KEEP_MODEL_DIR=1
    tail -20 "$out" >&2 || true
  fi
}

# The correct model: safety (no overflow, no stale read, unlink reserve, no false fault, no lost wake-up
# as an invalid end state) at two sizes, liveness under weak fairness, and both hostile peers.
run safety "" safety pass
run safety-4data "-DRESERVE=1 -DNDATA=4" safety pass
run done_eventually "" done_eventually pass
run requests_consumed "" requests_consumed pass
run responses_consumed "" responses_consumed pass
run hostile-frontend "-DHOSTILE_FRONT" hostile pass
run hostile-backend "-DHOSTILE_BACK" hostile pass
# Broken variants: each must produce a counterexample.
run lost-wakeup "-DNO_FINAL_CHECK" safety fail
run lost-wakeup "-DEVENT_AFTER_CHECK" safety fail
run lost-wakeup "-DSEQ_AFTER_ARM" safety fail
run done_eventually "-DNO_FINAL_CHECK" done_eventually fail
run done_eventually "-DEVENT_AFTER_CHECK" done_eventually fail
run unlink-reserve "-DNO_RESERVE" safety fail
run hostile-frontend "-DHOSTILE_FRONT -DNO_PROD_CHECK" hostile fail
run hostile-backend "-DHOSTILE_BACK -DNO_RSP_CHECK" hostile fail

if [[ "$failures" == 0 ]]; then
  echo "verify-model: every property holds and every broken variant fails"
else
  echo "verify-model: $failures unexpected result(s)" >&2
  exit 1
fi
