// A streamed completion (SSE) through the openai package, compared with the same request not
// streamed (greedy, so both must say the same), with usage in the last chunk.
const {client, check, run, model} = require('./common.cjs');

run(async () => {
  const c = client();
  const req = {
    model,
    messages: [{role: 'user', content: 'Tell me about the weather.'}],
    max_tokens: 24,
    temperature: 0,
    stop: ['zzz'],
  };
  const whole = await c.chat.completions.create(req);
  const stream = await c.chat.completions.create(
      {...req, stream: true, stream_options: {include_usage: true}});
  let content = '';
  let finish = null;
  let usage = null;
  let chunks = 0;
  let role = null;
  for await (const chunk of stream) {
    check(chunk.object === 'chat.completion.chunk', 'chunk object');
    chunks++;
    if (chunk.usage) usage = chunk.usage;
    if (chunk.choices.length === 0) continue;
    const ch = chunk.choices[0];
    if (ch.delta.role) role = ch.delta.role;
    if (ch.delta.content) content += ch.delta.content;
    if (ch.finish_reason) finish = ch.finish_reason;
  }
  check(role === 'assistant', 'first delta has the role');
  check(usage !== null, 'usage chunk');
  check(content === whole.choices[0].message.content,
        'streamed content ' + JSON.stringify(content) + ' equals the whole reply ' +
            JSON.stringify(whole.choices[0].message.content));
  check(finish === whole.choices[0].finish_reason, 'finish reason');
  check(usage.completion_tokens === whole.usage.completion_tokens, 'usage equal');
  check(usage.prompt_tokens === whole.usage.prompt_tokens, 'prompt usage equal');
  return {content, finish_reason: finish, usage, chunks};
});
