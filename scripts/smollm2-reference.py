import json, sys, numpy as np
import llama_cpp
from llama_cpp import Llama
path = sys.argv[1]; fa = sys.argv[2] == "1"; prompts = json.loads(sys.argv[3]); n = int(sys.argv[4])
llm = Llama(model_path=path, n_ctx=1024, n_threads=2, verbose=False, flash_attn=fa)
out = []
for p in prompts:
    llm.reset()
    toks = llm.tokenize(p.encode(), add_bos=False, special=True)
    llm.eval(toks)
    gen, margins, top5 = [], [], None
    for i in range(n):
        lg = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),)).astype(np.float64)
        order = np.argsort(-lg)
        if top5 is None: top5 = [[int(order[j]), float(lg[order[j]])] for j in range(5)]
        t = int(order[0]); gen.append(t); margins.append(float(lg[order[0]] - lg[order[1]]))
        if t == llm.token_eos(): break
        llm.eval([t])
    out.append({"prompt": p, "prompt_tokens": toks, "generated_tokens": gen, "top2_margins": margins, "first_step_top5_logits": top5,
                "text": llm.detokenize(gen).decode("utf-8", "replace")})
print(json.dumps(out))
