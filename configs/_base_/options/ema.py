# Exponential moving average of the weights (MMEngine's EMAHook); validation and the
# saved checkpoints then use the averaged weights. Add this file to a config's _base_.
custom_hooks = [dict(type='EMAHook', momentum=1e-4, priority='ABOVE_NORMAL')]
