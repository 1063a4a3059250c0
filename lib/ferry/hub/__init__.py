"""The last step of a GPU session: publish what you trained (Hugging Face), run what others published (Replicate).

``tokens`` finds HF_TOKEN and REPLICATE_API_TOKEN; ``lora`` turns a training
output folder into a publishing plan (which weights, which samples, the model
card); ``hf`` carries a plan out in one commit and lists models;
``replicate_run`` types inputs from a model's schema, runs it and saves what it
made. The SDKs (``ferry[hf]``, ``ferry[replicate]``) are imported only inside
the calls that use them.
"""
