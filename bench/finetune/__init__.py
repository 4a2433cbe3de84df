"""Contrastive CLIP fine-tuning (accelerate + datasets): params, data, loss, training loop, checkpoint.

Standalone engine; the config/CLI wiring lives elsewhere. Entry points: `bench.finetune.launch.finetune`,
`needs_training`, `load_record`; multi-process runs go through

    python -m torch.distributed.run --standalone --nproc_per_node N -m bench.finetune.train --job JOB.json

(`accelerate launch --cpu --num_processes N` starts a single process on CPU: its simple launcher ignores
the process count without a multi-CPU config; torchrun gives N gloo processes that Accelerator picks up.)
Heavy imports stay inside functions so importing this package is cheap.
"""
