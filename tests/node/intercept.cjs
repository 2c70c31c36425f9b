// openai-node through kimi-free-api's interception proxy, as README's Node snippet shows.
// Node's built-in fetch ignores HTTPS_PROXY; an undici ProxyAgent passed as the dispatcher in
// `fetchOptions` sends the SDK's requests through the proxy. The client keeps OpenAI's default
// base URL; mitmproxy's CA is trusted through NODE_EXTRA_CA_CERTS.
//
//   PROXY_URL=http://127.0.0.1:8080 OPENAI_API_KEY=<Kimi refresh token> \
//   NODE_EXTRA_CA_CERTS=~/.mitmproxy/mitmproxy-ca-cert.pem node intercept.cjs "Hello"
"use strict";

const { OpenAI } = require("openai");
const { ProxyAgent } = require("undici");

async function main() {
  const client = new OpenAI({
    apiKey: process.env.OPENAI_API_KEY,
    maxRetries: 0,
    fetchOptions: { dispatcher: new ProxyAgent(process.env.PROXY_URL) },
  });
  const prompt = process.argv[2] || "Hello";
  const completion = await client.chat.completions.create({
    model: "gpt-4o",
    messages: [{ role: "user", content: prompt }],
  });
  const stream = await client.chat.completions.create({
    model: "gpt-4o",
    messages: [{ role: "user", content: prompt + " (streamed)" }],
    stream: true,
  });
  let streamed = "";
  for await (const chunk of stream) {
    streamed += chunk.choices[0]?.delta?.content || "";
  }
  console.log(
    JSON.stringify({ baseURL: client.baseURL, completion, streamed }),
  );
}

main().catch((error) => {
  console.error(String(error && error.stack ? error.stack : error));
  process.exit(1);
});
