# SGD with Nesterov momentum, lr 0.1 per 256 images scaled linearly to the real total
# batch (per-GPU batch x GPUs), 5 warm-up epochs then cosine to 0, 300 epochs.
optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True))

warmup_epochs = 5
max_epochs = 300
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs - warmup_epochs, eta_min=0,
         by_epoch=True, begin=warmup_epochs, end=max_epochs, convert_to_iter_based=True),
]

# Validate every 20 epochs, then every epoch for the last 10.
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=20,
                 dynamic_intervals=[(max_epochs - 10 + 1, 1)])
val_cfg = dict()
test_cfg = dict()

# The learning rate above is for a total batch of 256; MMEngine rescales it to
# (per-GPU batch x world size) / 256 when the runner starts.
auto_scale_lr = dict(base_batch_size=256, enable=True)
