"""Training and evaluation engine: the paper's recipe (SPEC §4) on torch.distributed, COCO evaluation,
and the table's measured columns (SPEC §5).

Modules (one concept each):

- ``config``     TrainConfig (typed recipe + run options; resolved with the model by ``gcrepro.runspec``)
- ``recipe``     SGD, linear lr scaling, warmup + step schedule
- ``trainer``    the loop (loss -> backward -> clip -> step) with hooks: metrics.jsonl, progress, checkpoints,
                 NaN guard
- ``epoch_data`` per-epoch, resumable batches from the data loader
- ``checkpoint`` atomic save, ``weights_only`` load, RNG states, the run spec a checkpoint records
- ``dist``       process group from torchrun's environment (NCCL/gloo), gathers, SyncBN
- ``launch``     start N local workers (from a shell or a notebook); ``worker`` is their entry point
- ``inference``  batch-1 inference with whole-pipeline fps; ``evaluate``: COCOEvaluator (bbox + segm)
- ``measure``    memory, s/iter, provenance (written by ``gcrepro.run_metrics``)
- ``api``        ``train(...)`` and ``evaluate(...)``; ``cli``: ``gcrepro train`` / ``gcrepro eval``

Several GPUs on one machine: ``gcrepro train ENTRY --data /data/coco --gpus 8``. Several machines:
run torchrun on each (``gcrepro train`` inside a torchrun worker joins its process group)::

    torchrun --nnodes 2 --nproc-per-node 8 --node-rank 0 --rdzv-backend c10d \\
        --rdzv-endpoint HOST0:29500 -m gcrepro.cli train ENTRY --data /data/coco --work-dir runs/x --gpus 8
"""
