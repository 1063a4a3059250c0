"""A stand-in for a training script: prints progress, writes a result file."""

import json
import os
import platform
import time

steps = int(os.environ.get("STEPS", "5"))
loss = 1.0
for step in range(1, steps + 1):
    loss *= 0.7
    print(f"step {step}/{steps} loss={loss:.4f}", flush=True)
    time.sleep(0.1)

os.makedirs("results", exist_ok=True)
with open("results/metrics.json", "w") as fh:
    json.dump({"final_loss": round(loss, 4), "steps": steps, "host": platform.node()}, fh)
    fh.write("\n")
print("wrote results/metrics.json")
