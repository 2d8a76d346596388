"""The adapter family: building the network with peft, its target rules, DoRA, the 4-bit base."""

# the name of the adapter peft layers hold; here, free of torch and peft, so a module that only reads
# adapter files (trainer.formats.check via kohya_import) does not import peft for a string
ADAPTER = "default"
