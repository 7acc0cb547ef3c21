// n > 1 (streamed and not) and log-probs through the openai package.
const {client, check, run, model} = require('./common.cjs');

run(async () => {
  const c = client();
  const messages = [{role: 'user', content: 'Say hello.'}];
  const r = await c.chat.completions.create(
      {model, messages, n: 3, temperature: 1.0, seed: 11, max_tokens: 10});
  check(r.choices.length === 3, 'three choices');
  r.choices.forEach((ch, i) => check(ch.index === i, 'choice index'));
  const s = await c.chat.completions.create(
      {model, messages, n: 3, temperature: 1.0, seed: 11, max_tokens: 10, stream: true});
  const texts = ['', '', ''];
  const finish = [null, null, null];
  for await (const chunk of s) {
    for (const ch of chunk.choices) {
      if (ch.delta.content) texts[ch.index] += ch.delta.content;
      if (ch.finish_reason) finish[ch.index] = ch.finish_reason;
    }
  }
  for (let i = 0; i < 3; i++) {
    check(texts[i] === r.choices[i].message.content,
          'streamed choice ' + i + ' equals the whole one (same seed)');
    check(finish[i] === r.choices[i].finish_reason, 'finish ' + i);
  }
  const lp = await c.chat.completions.create({
    model, messages, temperature: 0, max_tokens: 8, logprobs: true, top_logprobs: 3,
  });
  const content = lp.choices[0].logprobs.content;
  check(Array.isArray(content) && content.length >= 1, 'logprobs.content');
  for (const t of content) {
    check(typeof t.token === 'string' && typeof t.logprob === 'number', 'token entry');
    check(t.logprob <= 0, 'a log-prob is <= 0');
    check(Array.isArray(t.bytes), 'bytes');
    check(t.top_logprobs.length === 3, 'three top log-probs');
    for (let k = 1; k < 3; k++)
      check(t.top_logprobs[k - 1].logprob >= t.top_logprobs[k].logprob, 'top sorted');
    // Greedy: the chosen token is the most likely one.
    check(Math.abs(t.top_logprobs[0].logprob - t.logprob) < 1e-6, 'greedy token is the top one');
  }
  return {
    texts,
    distinct: new Set(texts).size,
    logprob_tokens: content.length,
    completion_tokens: lp.usage.completion_tokens,
    finish: lp.choices[0].finish_reason,
  };
});
