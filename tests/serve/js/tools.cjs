// Tool calling through the openai package against the fine-tuned model: for each city the
// non-streamed reply and the streamed one (accumulated by the package's own stream helper) must
// hold a get_weather call with that city.
const {client, check, run, model, weatherTools} = require('./common.cjs');

run(async () => {
  const c = client();
  const out = [];
  for (const city of ['Paris', 'Tokyo', 'Lima', 'Oslo']) {
    const req = {
      model,
      messages: [{role: 'user', content: `What is the weather in ${city}?`}],
      tools: weatherTools,
      tool_choice: 'auto',
      temperature: 0,
      max_tokens: 64,
    };
    const r = await c.chat.completions.create(req);
    const msg = r.choices[0].message;
    check(r.choices[0].finish_reason === 'tool_calls', city + ': finish_reason ' +
              r.choices[0].finish_reason + ' content ' + JSON.stringify(msg.content));
    check(msg.tool_calls && msg.tool_calls.length === 1, city + ': one tool call');
    const call = msg.tool_calls[0];
    check(call.type === 'function' && call.id.startsWith('call_'), 'call id and type');
    const args = JSON.parse(call.function.arguments);

    // Streamed: the package's helper assembles the tool calls from the chunks.
    const runner = c.beta.chat.completions.stream({...req, stream: true});
    const final = await runner.finalChatCompletion();
    const smsg = final.choices[0].message;
    check(final.choices[0].finish_reason === 'tool_calls', 'streamed finish_reason');
    check(smsg.tool_calls && smsg.tool_calls.length === 1, 'streamed: one tool call');
    const sargs = JSON.parse(smsg.tool_calls[0].function.arguments);

    // And the conversation continues: the tool's result goes back in a tool message.
    const follow = await c.chat.completions.create({
      model,
      messages: [
        ...req.messages, msg,
        {role: 'tool', tool_call_id: call.id, content: JSON.stringify({temp_c: 21})},
      ],
      tools: weatherTools,
      temperature: 0,
      max_tokens: 8,
    });
    check(follow.choices.length === 1, 'follow-up answered');
    out.push({
      city,
      name: call.function.name,
      args,
      stream_name: smsg.tool_calls[0].function.name,
      stream_args: sargs,
      content: msg.content,
    });
  }
  return {calls: out};
});
