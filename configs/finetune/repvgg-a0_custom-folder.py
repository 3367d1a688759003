# Fine-tune RepVGG-A0 from its published ImageNet weights on your own images, stored as
# one sub-folder per class (no list files needed; list files work too):
#
#   data/custom/train/<class name>/*.jpg
#   data/custom/val/<class name>/*.jpg
#
#   python tools/train.py configs/finetune/repvgg-a0_custom-folder.py
#   python tools/train.py configs/finetune/repvgg-a0_custom-folder.py --cfg-options \
#       train_dataloader.dataset.data_root=/my/data val_dataloader.dataset.data_root=/my/data \
#       test_dataloader.dataset.data_root=/my/data
#
# The classifier gets one output per class folder (num_classes='auto'); its ImageNet
# weights are not loaded (load_ignore_keys), everything else is, strictly. The backbone
# learns at a tenth of the new head's rate. The pipelines, the loss and the weight-decay
# rule are the ImageNet recipe's (configs/repvgg-a0.py); the schedule is short.
_base_ = ['../repvgg-a0.py']

data_root = 'data/custom'
# The published ImageNet weights by name (downloaded once into the torch.hub cache and
# SHA-256 checked); a checkpoint file or URL in any known key format works too.
load_from = 'repvgg-a0'
# The head's weights have ImageNet's 1000 classes: keep the new head's initial values.
load_ignore_keys = ['head.fc.*']

# 'auto': the number of class folders of train_dataloader.dataset (set when the model is
# built, and logged). Top-5 needs at least 5 classes, so only top-1 is reported.
model = dict(head=dict(num_classes='auto', topk=(1, )))
data_preprocessor = dict(num_classes='auto')

# 0.1 per 256 images for the new head (scaled to the real batch, as in every config),
# 0.01 for the pretrained backbone; 1 warm-up epoch, then cosine to 0 over 30 epochs.
max_epochs = 30
optim_wrapper = dict(
    optimizer=dict(lr=0.1),
    paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.1)}))
param_scheduler = dict(warmup=1, end=max_epochs)
train_cfg = dict(max_epochs=max_epochs, val_interval=1, dynamic_intervals=None)

train_dataloader = dict(dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(topk=(1, ))
test_evaluator = val_evaluator
