"""The adapter family: building the network with peft, its target rules, DoRA, the 4-bit base."""
