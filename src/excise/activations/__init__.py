"""The residual stream, shared by the floors above: capture it (``states``, ``prompts``), probe
it (``probe``), change it while a block runs (``prompts.hooked``, ``direction_ablated``) and fold
affine maps of it into the weights (``fold``). Methods, attacks, erasure and the bypass check all
read activations the same way from here; nothing here knows about any of them."""
