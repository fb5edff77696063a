// The load rnnserve bench drives through k6: one gRPC method, one request template, each
// virtual user on its own connection. With `sessions`, each VU is one session (its first
// step starts it); with `iterations`, each iteration starts a new session (to fill a server
// with idle sessions). A warm-up scenario runs first; figures come from `measure` only.
import grpc from 'k6/net/grpc';
import exec from 'k6/execution';
import { Counter } from 'k6/metrics';

const config = JSON.parse(open(__ENV.BENCH_CONFIG));
const client = new grpc.Client();
client.loadProtoset(config.protoset);

// Successes are counted by grpc_req_duration's `count`; failures need their own counter.
const failed = new Counter('steps_failed');

const scenarios = {};
if (config.warmup_s > 0) {
  // gracefulStop 0 keeps warm-up and measurement from overlapping, so the same VUs
  // (connections, sessions) carry on into the measurement.
  scenarios.warmup = {
    executor: 'constant-vus', vus: config.vus, duration: `${config.warmup_s}s`, gracefulStop: '0s',
  };
}
scenarios.measure = config.iterations > 0
  ? { executor: 'shared-iterations', vus: config.vus, iterations: config.iterations,
      maxDuration: '2h', startTime: `${config.warmup_s}s` }
  : { executor: 'constant-vus', vus: config.vus, duration: `${config.duration_s}s`,
      startTime: `${config.warmup_s}s` };

export const options = {
  scenarios,
  summaryTrendStats: ['count', 'med', 'p(90)', 'p(99)', 'avg', 'max'],
  // Thresholds that always pass: they make the summary report the `measure` submetrics.
  thresholds: {
    'grpc_req_duration{scenario:measure}': ['max>=0'],
    'steps_failed{scenario:measure}': ['count>=0'],
  },
};

let connected = false;
let started = false;
let errorsShown = 0;

export default function () {
  if (!connected) {
    client.connect(config.target, { plaintext: true, timeout: '60s' });
    connected = true;
  }
  const request = config.request;
  if (config.sessions) {
    const iterating = config.iterations > 0;
    const id = config.sequence_base
      + (iterating ? exec.scenario.iterationInTest : exec.vu.idInTest);
    request.parameters = { sequence_id: { int64_param: String(id) } };
    if (iterating || !started) {
      request.parameters.sequence_start = { bool_param: true };
    }
    started = true;
  }
  // The answer is not turned back into JSON: that would cost k6 more than the request.
  const response = client.invoke(
    config.method, request, { timeout: '60s', discardResponseMessage: true },
  );
  if (response && response.status === grpc.StatusOK) {
    return;
  }
  failed.add(1);
  if (errorsShown < 3) {
    errorsShown += 1;
    console.error(`step failed: ${JSON.stringify(response && response.error)}`);
  }
}

export function handleSummary(data) {
  return { [__ENV.BENCH_SUMMARY]: JSON.stringify(data) };
}
