// The server's errors as the openai package sees them: status, type, param and code.
const {client, run, model, check} = require('./common.cjs');

async function error_of(promise) {
  try {
    await promise;
  } catch (e) {
    return {status: e.status, type: e.type, param: e.param, code: e.code, message: e.message};
  }
  return null;
}

run(async () => {
  const c = client();
  const messages = [{role: 'user', content: 'hi'}];
  const out = {};
  out.unknown_field = await error_of(
      c.chat.completions.create({model, messages, max_tokens: 2, frobnicate: 1}));
  out.bad_temperature =
      await error_of(c.chat.completions.create({model, messages, max_tokens: 2, temperature: 9}));
  out.unknown_model =
      await error_of(c.chat.completions.create({model: 'nope', messages, max_tokens: 2}));
  out.bad_key = await error_of(
      client({apiKey: 'wrong'}).chat.completions.create({model, messages, max_tokens: 2}));
  const ok = await c.chat.completions.create({model, messages, max_tokens: 2});
  check(ok.choices.length === 1, 'a valid request still works');
  return out;
});
