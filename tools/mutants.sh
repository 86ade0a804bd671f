#!/usr/bin/env bash
# tools/mutants.sh: mutation testing (cargo-mutants) on the modules where a
# silent bug does the most harm. Each group mutates its files and runs only
# the unit tests that cover them, so a mutant costs one incremental build
# and a few seconds of tests. Slow (see docs/testing.md for the times on a
# 2-CPU machine), so it is not part of .ci/run.
#
#   tools/mutants.sh                 # every group
#   tools/mutants.sh deadline breaker # some groups
#   OUT=/tmp/mutants tools/mutants.sh # where the reports go (default: target/mutants)
#
# Needs cargo-mutants (`cargo install cargo-mutants --locked`). A group's
# report is OUT/GROUP/mutants.out/{caught,missed,unviable,timeout}.txt; the
# summary line per group is printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-mutants >/dev/null || {
    echo "mutants.sh: cargo-mutants is not installed: cargo install cargo-mutants --locked" >&2
    exit 1
}

OUT=${OUT:-target/mutants}

# group: files (comma-separated) | unit-test filters
declare -A FILES FILTERS
FILES[balance]="src/balance/pick.rs,src/balance/health.rs"
FILTERS[balance]="balance::"
FILES[retry]="src/retry/mod.rs,src/retry/stats.rs"
FILTERS[retry]="retry::"
FILES[breaker]="src/breaker/state.rs"
FILTERS[breaker]="breaker::"
FILES[classify]="src/classify/rules.rs,src/classify/grpc.rs"
FILTERS[classify]="classify::"
FILES[deadline]="src/facts/header.rs,src/facts/deadline.rs"
FILTERS[deadline]="facts:: deadline::"
FILES[limit]="src/limit/concurrency.rs,src/limit/rate.rs,src/limit/throttle.rs"
FILTERS[limit]="limit::"
ORDER=(deadline classify breaker retry balance limit)

groups=("$@")
((${#groups[@]})) || groups=("${ORDER[@]}")
for g in "${groups[@]}"; do
    [[ -n "${FILES[$g]:-}" ]] || {
        echo "mutants.sh: no group '$g' (groups: ${ORDER[*]})" >&2
        exit 2
    }
done

# No debug info: the copies build faster and take less disk.
export CARGO_PROFILE_DEV_DEBUG=0 CARGO_PROFILE_TEST_DEBUG=0

for g in "${groups[@]}"; do
    args=()
    IFS=, read -ra files <<<"${FILES[$g]}"
    for f in "${files[@]}"; do args+=(-f "$f"); done
    read -ra filters <<<"${FILTERS[$g]}"
    echo "== $g: ${files[*]} (tests: ${filters[*]})" >&2
    start=$(date +%s)
    # cargo-mutants exits non-zero when a mutant survives; keep going.
    cargo mutants "${args[@]}" --output "$OUT/$g" --timeout-multiplier 3 \
        -- --lib -- "${filters[@]}" || true
    echo "$g took $(($(date +%s) - start)) s" >"$OUT/$g/took.txt"
done

echo
printf '%-10s %7s %7s %9s %8s %s\n' group caught missed unviable timeout took
for g in "${groups[@]}"; do
    d="$OUT/$g/mutants.out"
    count() { [[ -f "$d/$1.txt" ]] && wc -l <"$d/$1.txt" || echo 0; }
    printf '%-10s %7s %7s %9s %8s %s\n' "$g" "$(count caught)" "$(count missed)" \
        "$(count unviable)" "$(count timeout)" "$(cut -d' ' -f3- "$OUT/$g/took.txt")"
done
