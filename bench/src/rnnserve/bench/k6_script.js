// The load rnnserve bench drives through k6: one gRPC method, one request template, each
// virtual user on its own connection. With `sessions`, each VU is one session (its first
// step starts it); with `iterations`, each iteration starts a new session (to fill a server
// with idle sessions). With `rows` > 0, a request carries one step for each of `rows`
// sessions (multi-session requests: control tensors sequence_id and sequence_start), and
// the sessions above are `rows` sessions each. With `offsets`, a session's steps carry
// sequence_offset (each step is one time step). With `ca`, the connection speaks TLS,
// trusting that CA; with `token`, every call sends it as a bearer token. A warm-up scenario
// runs first; figures come from `measure` only. With `stream`, each VU opens one
// ModelStreamInfer stream for its session (or rows) and writes its next step when the
// answer to the last came back; its one iteration lasts warm-up and measurement, and steps
// answered inside the measurement window count (`stream_steps`, `stream_step_duration`).
import grpc from 'k6/net/grpc';
import encoding from 'k6/encoding';
import exec from 'k6/execution';
import { Counter, Trend } from 'k6/metrics';

const config = JSON.parse(open(__ENV.BENCH_CONFIG));
const client = new grpc.Client();
client.loadProtoset(config.protoset);
// Files are read in the init context, the only place k6 lets a script read them.
const connectParams = config.ca
  ? { plaintext: false, timeout: '60s', tls: { cacerts: [open(config.ca)] } }
  : { plaintext: true, timeout: '60s' };
const callParams = { timeout: '60s', discardResponseMessage: !(config.rows > 0) };
if (config.token) {
  callParams.metadata = { authorization: `Bearer ${config.token}` };
}

// Successes are counted by grpc_req_duration's `count`; failures need their own counter.
const failed = new Counter('steps_failed');
// Rows of multi-session requests whose session could not step (the request itself passed).
const rowsFailed = new Counter('rows_failed');
// Streams: k6 times no message of a stream, so steps are counted and timed here.
const streamSteps = new Counter('stream_steps');
const streamStepDuration = new Trend('stream_step_duration', true);

const scenarios = {};
if (config.warmup_s > 0 && !config.stream) {
  // gracefulStop 0 keeps warm-up and measurement from overlapping, so the same VUs
  // (connections, sessions) carry on into the measurement.
  scenarios.warmup = {
    executor: 'constant-vus', vus: config.vus, duration: `${config.warmup_s}s`, gracefulStop: '0s',
  };
}
if (config.stream) {
  // One iteration per VU: its stream runs through warm-up and measurement, windows of
  // the scenario's clock (exec.scenario.startTime) tell them apart.
  scenarios.measure = {
    executor: 'per-vu-iterations', vus: config.vus, iterations: 1,
    maxDuration: `${config.warmup_s + config.duration_s + 60}s`,
  };
} else if (config.iterations > 0) {
  scenarios.measure = {
    executor: 'shared-iterations', vus: config.vus, iterations: config.iterations,
    maxDuration: '2h', startTime: `${config.warmup_s}s`,
  };
} else {
  scenarios.measure = {
    executor: 'constant-vus', vus: config.vus, duration: `${config.duration_s}s`,
    startTime: `${config.warmup_s}s`,
  };
}
export const options = {
  scenarios,
  summaryTrendStats: ['count', 'med', 'p(90)', 'p(99)', 'avg', 'max'],
  // Thresholds that always pass: they make the summary report the `measure` submetrics.
  thresholds: {
    'grpc_req_duration{scenario:measure}': ['max>=0'],
    'steps_failed{scenario:measure}': ['count>=0'],
    'rows_failed{scenario:measure}': ['count>=0'],
    'stream_steps': ['count>=0'],
  },
};

// What this VU's session has had acknowledged. k6 may interrupt an iteration anywhere
// when the warm-up stops, so these change only after an answer came back.
let connected = false;
let started = false;
let offset = 0; // time steps of this VU's session, with `offsets`
let begun = false; // whether this VU has sent its session's start
let errorsShown = 0;
let continuing = null; // a VU's multi-session request after its first

// Raw contents of a [rows] tensor: UINT64 ids from `first` (ids stay below 2^32), or BOOL.
function rawIds(first) {
  const view = new DataView(new ArrayBuffer(8 * config.rows));
  for (let row = 0; row < config.rows; row += 1) {
    view.setUint32(8 * row, first + row, true);
  }
  return encoding.b64encode(view.buffer);
}

function rawTrue() {
  return encoding.b64encode(new Uint8Array(config.rows).fill(1).buffer);
}

function rowsRequest(first, start) {
  const shape = [String(config.rows)];
  const request = Object.assign({}, config.request);
  request.inputs = config.request.inputs.concat(
    [{ name: 'sequence_id', datatype: 'UINT64', shape }],
  );
  request.raw_input_contents = config.request.raw_input_contents.concat([rawIds(first)]);
  if (start) {
    request.inputs.push({ name: 'sequence_start', datatype: 'BOOL', shape });
    request.raw_input_contents.push(rawTrue());
  }
  return request;
}

// The request of this iteration's step, and whether it starts the session.
function sessionRequest() {
  const iterating = config.iterations > 0;
  const index = iterating ? exec.scenario.iterationInTest : exec.vu.idInTest;
  const start = iterating || !started;
  if (config.rows > 0) {
    if (!start) {
      continuing = continuing || rowsRequest(config.sequence_base + index * config.rows, false);
      return [continuing, start];
    }
    return [rowsRequest(config.sequence_base + index * config.rows, true), start];
  }
  const request = config.request;
  request.parameters = { sequence_id: { int64_param: String(config.sequence_base + index) } };
  if (start) {
    request.parameters.sequence_start = { bool_param: true };
  }
  // A start that begins the session again (its last step failed) carries no offset: it is
  // applied whatever the server holds, where a start at offset 0 on a sequence that went on
  // is refused as a late attempt at its first step.
  if (config.offsets && !(start && begun)) {
    request.parameters.sequence_offset = { int64_param: String(start ? 0 : offset) };
  }
  begun = begun || start;
  return [request, start];
}

function report(message) {
  if (errorsShown < 3) {
    errorsShown += 1;
    console.error(message);
  }
}

// The rows a multi-session answer says could not step (0 for none).
function failedRowsOf(message) {
  const parameter = ((message && message.parameters) || {}).failed_rows || {};
  return Number(parameter.int64Param || parameter.int64_param || 0);
}

// This VU's session (or rows) over one stream: a step is written when the last one's
// answer came back; the stream ends once the measurement window closed.
function streamSession() {
  const begin = exec.scenario.startTime + 1000 * config.warmup_s;
  const end = begin + 1000 * config.duration_s;
  const stream = new grpc.Stream(client, config.method, { metadata: callParams.metadata });
  let sentAt = 0;
  let start = false;
  const next = () => {
    if (Date.now() >= end) {
      stream.end();
      return;
    }
    const [request, starts] = config.sessions ? sessionRequest() : [config.request, false];
    start = starts;
    sentAt = Date.now();
    stream.write(request);
  };
  stream.on('data', (reply) => {
    const answered = Date.now();
    const counted = sentAt >= begin && answered <= end;
    const error = reply.errorMessage || reply.error_message;
    if (error) {
      if (counted) failed.add(1);
      report(`step failed: ${error}`);
      started = false; // as a client would: begin the sequence again
      continuing = null;
    } else {
      started = true;
      offset = start ? 1 : offset + 1;
      const rows = config.rows > 0 ? failedRowsOf(reply.inferResponse || reply.infer_response) : 0;
      if (counted) {
        streamSteps.add(1);
        streamStepDuration.add(answered - sentAt);
        if (rows > 0) rowsFailed.add(rows);
      }
      if (rows > 0) report(`${rows} rows failed`);
    }
    next();
  });
  stream.on('error', (error) => {
    failed.add(1);
    report(`stream failed: ${JSON.stringify(error)}`);
  });
  next();
}

export default function () {
  if (!connected) {
    client.connect(config.target, connectParams);
    connected = true;
  }
  if (config.stream) {
    streamSession();
    return;
  }
  const [request, start] = config.sessions ? sessionRequest() : [config.request, false];
  // Read before the call: a call of the warm-up is not measured. k6 cuts off those in
  // flight when the warm-up stops (its gracefulStop 0s), as CANCELLED or DEADLINE_EXCEEDED
  // (the server answered them), and their failure may come back once this VU measures.
  const warming = exec.scenario.name === 'warmup';
  // The answer is turned back into JSON only when its rows must be checked (callParams):
  // that costs k6 more than the request.
  const response = client.invoke(config.method, request, callParams);
  if (!response || response.status !== grpc.StatusOK) {
    if (!warming) {
      failed.add(1);
      report(`step failed: ${JSON.stringify(response && response.error)}`);
    }
    // As a client would: begin the sequence again (a start cut off when the warm-up
    // scenario stops never reached the server's state).
    started = false;
    continuing = null;
    return;
  }
  started = true;
  offset = start ? 1 : offset + 1;
  if (config.rows > 0) {
    const rows = failedRowsOf(response.message);
    if (rows > 0) {
      rowsFailed.add(rows);
      report(`${rows} rows failed`);
    }
  }
}

export function handleSummary(data) {
  return { [__ENV.BENCH_SUMMARY]: JSON.stringify(data) };
}
