# Quantization-aware training (QAT) of the demo's QARepVGG-A0 to INT8 (`make int8-demo`;
# see configs/qat/repvgg-a0_qat.py for the method). Input: a checkpoint of
# configs/demo/qarepvgg-a0_demo.py, training-time or fused:
#   python tools/qat.py configs/demo/qarepvgg-a0_qat_demo.py CHECKPOINT model_int8.onnx
_base_ = ['./qarepvgg-a0_demo.py']

qat_epochs = 3
# As the original's quant_qat_train.py (--fixbn, --fixobserver): the BN statistics stop
# moving once epoch > 2 * epochs // 8 has been trained, the observed ranges once epoch >
# 3 * epochs // 8 has; counted from 0, the first frozen epochs are these.
model = dict(_delete_=True, type='QATClassifier', float_model={{_base_.model}},
             input_size={{_base_.image_size}}, freeze_bn_epoch=2 * qat_epochs // 8 + 2,
             freeze_observer_epoch=3 * qat_epochs // 8 + 2)
# Several GPUs: BN statistics and ranges averaged over the ranks after every iteration.
custom_hooks_qat = [dict(type='QATSyncHook')]
qat = dict(bn_images=256, calib_images=256, seed=0)
# As the RepVGG-A0 QAT demo; the learning rate is given per 1024 images here, the rule
# the QARepVGG demo trains with (configs/demo/qarepvgg-a0_demo.py), so it is a quarter.
optim_wrapper = dict(optimizer=dict(lr=4e-3, weight_decay=4e-5))
param_scheduler = dict(warmup=0, end=qat_epochs)
train_cfg = dict(max_epochs=qat_epochs)
