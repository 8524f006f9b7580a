"""Input and output names of the dense layer graphs: the contract between exporter and runtime."""

LAYER_INPUTS = ("hidden", "cos", "sin", "mask", "past_k", "past_v")
MOE_OUTPUTS = ("residual", "moe_in", "router_logits", "present_k", "present_v")
DENSE_OUTPUTS = ("hidden_out", "present_k", "present_v")
