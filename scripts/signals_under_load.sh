#!/usr/bin/env bash
# The signal and kill tests, repeated under load: each repetition runs them (two pytest
# workers) while ../shared/tools/under-load keeps every core busy, as a shared CI machine may.
# They race a clock, so they must pass here too. Prints one line a repetition and the
# failures.   Usage: scripts/signals_under_load.sh [REPETITIONS=20] [PYTHON=python]
set -u
cd "$(dirname "$0")/.."
reps=${1:-20}
python=${2:-python}
load=../shared/tools/under-load
[ -x "$load" ] || { echo "needs $load" >&2; exit 2; }
select="interrupt or signal or sigterm or kill or 130 or entry_point"
failed=0
for i in $(seq 1 "$reps"); do
  start=$(date +%s)
  out=$("$load" "$python" -m pytest -q -n 2 -p no:cacheprovider -rf \
        tests/test_cli_interrupts.py tests/test_files.py -k "$select" 2>&1) || failed=$((failed + 1))
  echo "repetition $i: $(echo "$out" | tail -1) ($(( $(date +%s) - start )) s)"
  echo "$out" | grep "^FAILED" | sed 's/^/   /'
done
echo "$failed of $reps repetitions had a failure"
[ "$failed" -eq 0 ]
