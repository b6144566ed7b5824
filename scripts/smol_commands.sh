#!/bin/bash
# Every text training command on the real SmolLM2-135M-Instruct, one step each, in bf16 and fp32:
#   bash scripts/smol_commands.sh [WORKDIR]
# Prints one markdown row per command and precision (exit code, wall seconds); logs go to WORKDIR.
# Run from the repository root in Mova's environment (the model is fetched on first use). About 10 minutes
# on a 2-core CPU.
set -u
W=${1:-$(mktemp -d)}
mkdir -p "$W"
M=smollm2-135m-instruct
python -m mova.data.synthetic_prefs "$W/prefs" --train 16 --test 8 > "$W/data.log" 2>&1
python -c "from mova.data.colour_task import write_colour_task; write_colour_task('$W/colour', n_prompts=8, n_sft=8)" \
    >> "$W/data.log" 2>&1
python -m mova.data.arith_mini --out "$W/arith" --train 16 --test 4 >> "$W/data.log" 2>&1
echo "| command | precision | exit code | wall s |"
echo "|---|---|---:|---:|"
failed=0
run() {
    local name=$1 prec=$2; shift 2
    local t0; t0=$(date +%s)
    timeout 1200 "$@" > "$W/$name-$prec.log" 2>&1
    local rc=$?
    echo "| $name | $prec | $rc | $(( $(date +%s) - t0 )) |"
    [ "$rc" -eq 0 ] || failed=1
}
for prec in bf16 fp32; do
    B="train.bf16=$([ "$prec" = bf16 ] && echo true || echo false)"
    run "train dpo (LoRA)" "$prec" mova train dpo --config train/configs/smol_dpo.yaml data.data_path="$W/prefs/train.jsonl" \
        train.output_dir="$W/dpo-lora-$prec" train.max_steps=1 train.per_device_train_batch_size=2 "$B"
    run "train dpo (full, reference copy)" "$prec" mova train dpo --config train/configs/smol_dpo.yaml \
        data.data_path="$W/prefs/train.jsonl" train.output_dir="$W/dpo-full-$prec" train.max_steps=1 \
        train.per_device_train_batch_size=2 train.lora=null dpo.reference=copy "$B"
    run "train rm (full)" "$prec" mova train rm --config train/configs/tiny_rm.yaml init_from=$M \
        data.data_path="$W/prefs/train.jsonl" data.eval_data_path="$W/prefs/test.jsonl" train.output_dir="$W/rm-$prec" \
        train.max_steps=1 train.per_device_train_batch_size=2 train.learning_rate=1e-5 "$B"
    run "train ppo (LoRA)" "$prec" mova train ppo --config train/configs/tiny_ppo_text.yaml init_from=$M \
        data.data_path="$W/colour/prompts.jsonl" train.output_dir="$W/ppo-$prec" train.max_steps=1 \
        train.learning_rate=1e-5 ppo.rollout_batch_size=4 ppo.mini_batch_size=2 ppo.max_new_tokens=8 train.lora.r=8 "$B"
    run "train grpo (full)" "$prec" mova train grpo --config train/configs/tiny_grpo_text.yaml init_from=$M \
        data.data_path="$W/colour/prompts.jsonl" train.output_dir="$W/grpo-$prec" train.max_steps=1 \
        train.learning_rate=1e-5 grpo.rollout_batch_size=2 grpo.num_generations=2 grpo.mini_batch_size=2 \
        grpo.max_new_tokens=8 "$B"
    run "train r3 (LoRA, smol_r3.yaml)" "$prec" mova train r3 --config train/configs/smol_r3.yaml data.data_path="$W/arith" \
        train.output_dir="$W/r3-$prec" train.max_steps=1 ppo.rollout_batch_size=4 ppo.mini_batch_size=2 \
        ppo.max_new_tokens=16 ppo.critic_pretrain_iterations=0 "$B"
    D=$([ "$prec" = bf16 ] && echo bfloat16 || echo float32)
    run "eval gsm8k (chat template, 2 questions)" "$prec" mova eval gsm8k --model $M --chat-template \
        --data mova/assets/fewshot/gsm8k.jsonl --shots 1 --limit 2 --max-new-tokens 32 --dtype "$D" \
        --out-dir "$W/gsm8k-$prec" --no-progress
    run "polish (chat, 2 problems)" "$prec" mova polish --model $M --data mova/assets/fewshot/gsm8k.jsonl --chat \
        --limit 2 --max-rounds 1 --shots 1 --answer-max-new-tokens 32 --rewrite-max-new-tokens 32 --dtype "$D" \
        --out-dir "$W/polish-$prec" --no-progress
done
echo "logs: $W"
exit $failed
