# Modules resolve in the repvgg_mm scope first, then MMPretrain's, then MMEngine's.
default_scope = 'repvgg_mm'
custom_imports = dict(imports=['repvgg_mm'], allow_failed_imports=False)
# MMEngine's Runner plus atomic checkpoint writes and a resume that skips truncated
# checkpoints (repvgg_mm/engine/runner.py).
runner_type = 'RepVGGRunner'

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=100),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # Save every epoch (resumable), keep the last 3 and the best top-1.
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3,
                    save_best='accuracy/top1', rule='greater'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='VisualizationHook', enable=False),
    # reseed every epoch from (seed, epoch, rank): a resumed run replays the same epochs
    epoch_seed=dict(type='EpochSeedHook'),
    # fail early when labels do not fit model.head.num_classes; stop at a NaN/inf loss
    data_check=dict(type='DataModelCheckHook'),
    finite_loss=dict(type='NonFiniteLossHook'),
    broken_images=dict(type='BrokenImageReportHook'),
)

env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)

vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='UniversalVisualizer', vis_backends=vis_backends)

log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0, diff_rank_seed=True, deterministic=False)
