# The specification's schedule (docs/repvgg.md 3a): SGD, momentum 0.9, Nesterov, weight decay
# 1e-4 under the original rule (identity BN weight decayed; other 1-D parameters and
# biases not), lr 0.1 per 256 images scaled linearly to the real total batch (per-GPU
# batch x GPUs), per-iteration linear warm-up from 0 over 5 epochs, then cosine to 0
# computed over the whole run, 300 epochs.
optim_wrapper = dict(
    constructor='RepVGGOptimWrapperConstructor',
    optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True),
    paramwise_cfg=dict(decay_rule='original'),
)

max_epochs = 300
param_scheduler = dict(type='WarmupCosineLR', warmup=5, begin=0, end=max_epochs,
                       by_epoch=True, convert_to_iter_based=True)

# Validate every 20 epochs, then every epoch for the last 10 (the best top-1 is kept
# by the checkpoint hook). Change val_interval for more or fewer validations.
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=20,
                 dynamic_intervals=[(max_epochs - 10 + 1, 1)])
val_cfg = dict()
test_cfg = dict()

# The learning rate above is for a total batch of 256; MMEngine rescales it to
# (per-GPU batch x world size) / 256 when the runner starts -- no flag needed.
auto_scale_lr = dict(base_batch_size=256, enable=True)
