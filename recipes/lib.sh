# Shared by the recipes: options, the jaxlm command, and the results table.
#   --full        the longer version (the configs' own sizes)
#   --tiny        a seconds-long smoke test of every command (what CI runs)
#   --out DIR     where everything goes (default: runs/<recipe>)
# JAXLM names the jaxlm to run (default: jaxlm; e.g. JAXLM="python -m jaxlm.cli").
set -euo pipefail

SIZE=default
while [ $# -gt 0 ]; do
  case "$1" in
    --full) SIZE=full ;;
    --tiny) SIZE=tiny ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed 's/^# \{0,1\}//; /^set -euo/d'; exit 0 ;;
    *) echo "usage: $0 [--full | --tiny] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
read -r -a JAXLM <<< "${JAXLM:-jaxlm}"
mkdir -p "$OUT"
RESULTS="$OUT/results.md"

jaxlm() { "${JAXLM[@]}" "$@"; }

# The last JSON line a command printed (its metrics), saved to FILE: `last_json FILE jaxlm eval ...`
last_json() { local file="$1"; shift; "$@" | tail -n 1 | tee "$file"; }

# A number from a JSON metrics file: `metric FILE eval_accuracy`
metric() { grep -o "\"$2\": [-0-9.e]*" "$1" | head -n 1 | awk '{printf "%.4f", $2}'; }

# Start the results table: `table_header "col 1" "col 2" ...`
table_header() {
  { echo "# $(basename "$0" .sh) ($SIZE size, $(date -u +%Y-%m-%d))"; echo
    printf '| %s ' "$@"; echo '|'; printf '|---'; printf '|---:%.0s' "${@:2}"; echo '|'; } > "$RESULTS"
}

# One row of it: `table_row "cell 1" "cell 2" ...`
table_row() { { printf '| %s ' "$@"; echo '|'; } >> "$RESULTS"; }
