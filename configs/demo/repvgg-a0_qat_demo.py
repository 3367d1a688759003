# Quantization-aware training (QAT) of the demo's RepVGG-A0 to INT8 (`make int8-demo`;
# see configs/qat/repvgg-a0_qat.py for the ImageNet config and the method). Input: a
# checkpoint of configs/demo/repvgg-a0_demo.py, training-time or fused:
#   python tools/qat.py configs/demo/repvgg-a0_qat_demo.py CHECKPOINT model_int8.onnx
_base_ = ['./repvgg-a0_demo.py']

qat_epochs = 3
# The fused demo model with a BN after every fused conv, fake-quantized (INT8).
# As the original's quant_qat_train.py (--fixbn, --fixobserver): the BN statistics stop
# moving once epoch > 2 * epochs // 8 has been trained, the observed ranges once epoch >
# 3 * epochs // 8 has; counted from 0, the first frozen epochs are these.
model = dict(_delete_=True, type='QATClassifier', float_model={{_base_.model}},
             input_size={{_base_.image_size}}, freeze_bn_epoch=2 * qat_epochs // 8 + 2,
             freeze_observer_epoch=3 * qat_epochs // 8 + 2)
# Several GPUs: BN statistics and ranges averaged over the ranks after every iteration.
custom_hooks_qat = [dict(type='QATSyncHook')]
# BN statistics and calibration: images drawn (seeded) from the train split through
# the test pipeline, as tools/quantize.py calibrates.
qat = dict(bn_images=256, calib_images=256, seed=0)

# The original's QAT recipe (configs/qat/repvgg-a0_qat.py) fitted to the demo's short
# run: weight decay 4e-5, cosine without warm-up, the base's train pipeline, and 4x the
# original's learning rate (4e-3 per 256 images). Measured on the demo data (val top-1
# of the fake-quantized model after each epoch): 93.0, 92.2 with lr 1e-3 over 2 epochs;
# 93.6, 94.2, 93.4 with 4e-3 over 3 (FP32: 94.0).
optim_wrapper = dict(optimizer=dict(lr=4e-3, weight_decay=4e-5))
param_scheduler = dict(warmup=0, end=qat_epochs)
train_cfg = dict(max_epochs=qat_epochs)
