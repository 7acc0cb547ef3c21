// A plain chat completion through the openai package.
const {client, check, run, model} = require('./common.cjs');

run(async () => {
  const c = client();
  const models = await c.models.list();
  const ids = models.data.map((m) => m.id);
  check(ids.includes(model), 'models.list has ' + model + ': ' + JSON.stringify(ids));
  const r = await c.chat.completions.create({
    model,
    messages: [{role: 'system', content: 'Be brief.'}, {role: 'user', content: 'Say hello.'}],
    max_tokens: 12,
    temperature: 0,
    user: 'test-user',
  });
  check(r.object === 'chat.completion', 'object');
  check(r.id.startsWith('chatcmpl-'), 'id');
  check(r.choices.length === 1, 'one choice');
  const ch = r.choices[0];
  check(ch.message.role === 'assistant', 'role');
  check(typeof ch.message.content === 'string', 'content is a string');
  check(['stop', 'length'].includes(ch.finish_reason), 'finish_reason ' + ch.finish_reason);
  check(r.usage.total_tokens === r.usage.prompt_tokens + r.usage.completion_tokens, 'usage sum');
  check(r.usage.completion_tokens >= 1 && r.usage.completion_tokens <= 12, 'completion tokens');
  return {
    content: ch.message.content,
    finish_reason: ch.finish_reason,
    usage: r.usage,
    models: ids,
  };
});
