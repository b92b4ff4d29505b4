"""Training: spec, job queue, worker child runner (TRL + PEFT), callbacks, adapter registry,
demo base model. Modules import heavy libraries (torch, transformers) only where needed."""
