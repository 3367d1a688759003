# INT8 quantization-aware training of QARepVGG-A0 on ImageNet; the method and the
# schedule are configs/qat/repvgg-a0_qat.py's. Input: a checkpoint of
# configs/qarepvgg-a0.py.
_base_ = ['../qarepvgg-a0.py']

qat_epochs = 20
# As the original's quant_qat_train.py (--fixbn, --fixobserver): the BN statistics stop
# moving once epoch > 2 * epochs // 8 has been trained, the observed ranges once epoch >
# 3 * epochs // 8 has; counted from 0, the first frozen epochs are these.
model = dict(_delete_=True, type='QATClassifier', float_model={{_base_.model}},
             input_size=224, freeze_bn_epoch=2 * qat_epochs // 8 + 2,
             freeze_observer_epoch=3 * qat_epochs // 8 + 2)
# Several GPUs: BN statistics and ranges averaged over the ranks after every iteration.
custom_hooks_qat = [dict(type='QATSyncHook')]
qat = dict(bn_images=256, calib_images=256, seed=0)

optim_wrapper = dict(optimizer=dict(lr=1e-3, weight_decay=4e-5))
param_scheduler = dict(warmup=0, end=qat_epochs)
train_cfg = dict(max_epochs=qat_epochs, val_interval=1, dynamic_intervals=None)
