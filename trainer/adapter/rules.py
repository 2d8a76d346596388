"""Which adapter options combine, and why not when they don't: plain Python, no torch or peft, so the
config schema (and so the GUI) can refuse a combination the moment it is chosen."""
from __future__ import annotations


def network_problems(net) -> list[str]:
    """Reasons a NetworkSection cannot train (empty when it can)."""
    out = []
    if net.use_dora and net.algo != "lora":
        out.append(f"network.use_dora: DoRA is a LoRA option; peft has no DoRA form of {net.algo!r}")
    if net.loftq and net.algo != "lora":
        out.append(f"network.loftq: LoftQ initialises LoRA's A and B; it does not apply to {net.algo!r}")
    if net.quantize_base == "nf4" and net.algo in ("loha", "lokr"):
        out.append(f"network.quantize_base = 'nf4': peft has no 4-bit (bitsandbytes) layer for {net.algo!r}; "
                   "use algo 'lora' for QLoRA")
    if net.quantize_base == "nf4" and net.algo == "adalora":
        out.append("network.quantize_base = 'nf4': AdaLoRA on a 4-bit base is not supported by this build "
                   "(use algo 'lora' for QLoRA)")
    if net.algo == "adalora" and net.adalora_target_rank >= net.rank:
        # AdaLoRA prunes from Rank down to the target: with nothing to prune, peft's budget step fails
        out.append(f"AdaLoRA average rank (network.adalora_target_rank = {net.adalora_target_rank}) must be below "
                   f"Rank (dim) (network.rank = {net.rank}), the rank AdaLoRA starts from and prunes down: "
                   f"lower the AdaLoRA average rank or raise the rank")
    return out


def schedule_problems(net, max_train_steps: int) -> list[str]:
    if net.algo == "adalora" and max_train_steps < 3:
        return [f"network.algo = 'adalora' needs schedule.max_train_steps ≥ 3 to allocate ranks (got {max_train_steps})"]
    return []
