"""Contrastive fine-tuning (accelerate + datasets): params, data, loss, training loop, checkpoint.

CLIP bases train their weights (train.py); phi3v-lm bases train a peft LoRA/DoRA adapter with VLM2Vec's
recipe (phi3v.py: adapter, pooling, GradCache step; phi3v_train.py: the loop and the outputs).

Standalone engine; the config/CLI wiring lives elsewhere. Entry points: `bench.finetune.launch.finetune`,
`needs_training`, `load_record`; multi-process runs go through

    python -m torch.distributed.run --standalone --nproc_per_node N -m bench.finetune.train --job JOB.json

(`accelerate launch --cpu --num_processes N` starts a single process on CPU: its simple launcher ignores
the process count without a multi-CPU config; torchrun gives N gloo processes that Accelerator picks up.)
Heavy imports stay inside functions so importing this package is cheap.
"""
