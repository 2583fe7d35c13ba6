#!/usr/bin/env bash
# Bounded coverage-guided fuzzing of the reader and the unpacker (atheris). Exits 1 on any crash,
# printing the input (base64) so it can be turned into a regression vector from the log alone.
#
#   bash fuzz/run.sh                          # about 2 minutes, as CI runs it
#   FUZZ_SECONDS=3600 bash fuzz/run.sh        # longer, by hand
#   FUZZ_WORK=fuzz-work bash fuzz/run.sh      # keep (and grow) the corpus between runs
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
total=${FUZZ_SECONDS:-120}
work=${FUZZ_WORK:-$(mktemp -d -t nanofmt-fuzz.XXXXXX)}
mkdir -p "$work/corpus/reader" "$work/corpus/unpack" "$work/crashes"
reader_seconds=$((total * 3 / 4))

fuzz() {  # name seconds [extra args]
    local name=$1 seconds=$2 log="$work/$1.log"
    shift 2
    echo "fuzz: $name for ${seconds}s (log: $log)"
    if "$py" "fuzz/fuzz_$name.py" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=3072 -max_len=65536 \
        -print_final_stats=1 -artifact_prefix="$work/crashes/$name-" "$@" "$work/corpus/$name" >"$log" 2>&1; then
        local runs cov
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -1)
        echo "fuzz: $name: ${runs:-?} inputs executed, $cov (Python edges / features), corpus $(ls "$work/corpus/$name" | wc -l) files"
        return 0
    fi
    tail -n 60 "$log"
    for crash in "$work/crashes/$name-"*; do
        [ -f "$crash" ] || continue
        echo "fuzz: $name CRASH input $crash ($(wc -c <"$crash") bytes), base64:"
        head -c 65536 "$crash" | base64 -w 120
    done
    echo "fuzz: $name found a crash: add the input to spec/vectors/regressions/ (fuzz/README.md)" >&2
    return 1
}

status=0
fuzz reader "$reader_seconds" --reasons-to="$work/reader-reasons.json" || status=1
fuzz unpack "$((total - reader_seconds))" || status=1
if [ -f "$work/reader-reasons.json" ]; then
    "$py" - "$work/reader-reasons.json" <<'PY'
import json, sys
counts = json.load(open(sys.argv[1]))
reasons = {k: v for k, v in counts.items() if k != "(valid)"}
print(f"fuzz: reader: {len(reasons)} distinct reasons hit, {counts.get('(valid)', 0)} inputs valid:")
print("  " + ", ".join(f"{k} {v}" for k, v in reasons.items()))
PY
fi
exit $status
