// Shared by the `shoal serve` client scripts: the official openai package (path from
// SHOAL_OPENAI_MODULE), a client for OPENAI_BASE_URL, and a failing assert that exits non-zero.
const mod = require(process.env.SHOAL_OPENAI_MODULE);
const OpenAI = mod.OpenAI || mod.default || mod;

function client(options = {}) {
  return new OpenAI({
    baseURL: process.env.OPENAI_BASE_URL,
    apiKey: process.env.OPENAI_API_KEY,
    maxRetries: 0,
    timeout: 120000,
    ...options,
  });
}

function check(cond, message) {
  if (!cond) {
    console.error('check failed: ' + message);
    process.exit(3);
  }
}

// Runs main(), prints its result as one JSON line; any exception fails the script.
function run(main) {
  main().then(
    (result) => {
      console.log(JSON.stringify(result));
    },
    (err) => {
      console.error('error: ' + (err && err.stack ? err.stack : err));
      process.exit(2);
    });
}

const weatherTools = [{
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Current weather in a city.',
    parameters:
        {type: 'object', properties: {city: {type: 'string'}}, required: ['city']},
  },
}];

module.exports = {OpenAI, client, check, run, model: process.env.MODEL, weatherTools};
