"""llama.cpp's speed on SmolLM2-135M, for BENCHMARKS.md beside attnforge's.

Needs llama-cpp-python (pip install llama-cpp-python==0.3.36; it builds
llama.cpp from source). Usage: bench-smollm2-llamacpp.py MODEL PROMPT N THREADS
Prints prompt tokens/s and generation tokens/s (greedy, no BOS, like the
reference), the median of 3 runs.
"""
import statistics, sys, time

import llama_cpp
import numpy as np
from llama_cpp import Llama

path, prompt, n, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
llm = Llama(model_path=path, n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False)
toks = llm.tokenize(prompt.encode(), add_bos=False, special=True)
pp, tg = [], []
for _ in range(3):
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(toks)
    t1 = time.perf_counter()
    gen = 0
    for _ in range(n):
        lg = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),))
        llm.eval([int(np.argmax(lg))])
        gen += 1
    t2 = time.perf_counter()
    pp.append(len(toks) / (t1 - t0))
    tg.append(gen / (t2 - t1))
print(f"llama.cpp: prompt {len(toks)} tokens: {statistics.median(pp):.1f} tokens/s; "
      f"generation {n} tokens: {statistics.median(tg):.1f} tokens/s ({threads} threads)")
