#!/usr/bin/env bash
# ALTA pre-training with torchrun (DDP). Edit the settings below, then:
#   ./run.sh                  train on MIMIC-CXR (extra flags are passed to main_pretrain.py)
#   ./run.sh --demo           the whole pipeline on generated data, on the CPU, in a minute or two:
#                             data, 2 epochs of a tiny ALTA with validation, the five evaluations
#                             (outputs in ./demo_output; see util/demo.py)
set -euo pipefail
cd "$(dirname "$0")"

# ---------------------------------------------------------------- settings
DATA_PATH=./MIMIC-CXR_dataset/                   # holds train.csv (prepare_mimic.py)
MRM_WEIGHTS=./vision_encoder_weights/MRM.pth     # vision initialisation
TEXT_ENCODER=./BiomedVLP-CXR-BERT-specialized    # CXR-BERT-specialized directory
RSNA_ROOT=./RSNA_dataset                         # per-epoch validation on its val_list.txt; empty: none
OUTPUT_DIR=./ALTA_results/                       # checkpoints, log.txt, logs/ (TensorBoard)
GPUS=0,1,2,3                                     # GPUs of this machine; one process each
NNODES=1                                         # machines; on each, set NODE_RANK and run this script
NODE_RANK=0
MASTER_ADDR=127.0.0.1                            # address of the machine with NODE_RANK=0
MASTER_PORT=12345
BATCH_SIZE=24                                    # per GPU
EPOCHS=100                                       # length of the learning-rate schedule
MAX_EPOCHS=30                                    # epochs actually trained
NUM_WORKERS=10

# The project's virtual environment when there is one (make demo / make test create it).
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

if [[ "${1:-}" == "--demo" ]]; then
    shift
    exec "$PYTHON" -m util.demo "$@"
fi

# ---------------------------------------------------------------- training
NPROC_PER_NODE=$(awk -F, '{print NF}' <<< "$GPUS")
VALIDATION=()
if [[ -n "$RSNA_ROOT" ]]; then
    VALIDATION=(--rsna_root "$RSNA_ROOT")
fi

# `python -m torch.distributed.run` is torchrun.
CUDA_VISIBLE_DEVICES=$GPUS OMP_NUM_THREADS=1 "$PYTHON" -m torch.distributed.run \
    --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NPROC_PER_NODE" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    main_pretrain.py \
    --model alta \
    --data_path "$DATA_PATH" \
    --resume "$MRM_WEIGHTS" --from_begin \
    --text_encoder "$TEXT_ENCODER" \
    "${VALIDATION[@]}" \
    --output_dir "$OUTPUT_DIR" \
    --batch_size "$BATCH_SIZE" --accum_iter 1 \
    --epochs "$EPOCHS" --max_epochs "$MAX_EPOCHS" --warmup_epochs 10 \
    --blr 1.5e-4 --weight_decay 0.05 \
    --mask_ratio 0.75 --norm_pix_loss \
    --save_freq 5 --num_workers "$NUM_WORKERS" \
    --note alta \
    "$@"
