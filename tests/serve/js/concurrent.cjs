// 12 clients at once (half streamed), each greedy: every reply must equal the one the same
// request got alone, first.
const {client, check, run, model} = require('./common.cjs');

async function ask(c, i, stream) {
  const req = {
    model,
    messages: [{role: 'user', content: `Question number ${i}: what is ${i} plus ${i}?`}],
    temperature: 0,
    max_tokens: 120,
  };
  if (!stream) return (await c.chat.completions.create(req)).choices[0].message.content;
  let text = '';
  for await (const chunk of await c.chat.completions.create({...req, stream: true}))
    for (const ch of chunk.choices) text += ch.delta.content || '';
  return text;
}

run(async () => {
  const clients = Array.from({length: 12}, () => client());
  const alone = [];
  for (let i = 0; i < 12; i++) alone.push(await ask(clients[0], i, false));
  const t0 = Date.now();
  const together = await Promise.all(clients.map((c, i) => ask(c, i, i % 2 === 1)));
  const ms = Date.now() - t0;
  let same = 0;
  for (let i = 0; i < 12; i++) same += together[i] === alone[i] ? 1 : 0;
  check(together.length === 12, 'twelve replies');
  return {same, total: 12, ms};
});
