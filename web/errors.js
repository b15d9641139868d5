// The module's typed errors: each message is one line saying what is wrong and what to do.

export class RnnxError extends Error {
  constructor(message) {
    super(message);
    this.name = this.constructor.name;
  }
}

/** The model file is not one this module can run (not ONNX, not rnnx, external data, broken graph). */
export class ModelFileError extends RnnxError {}

/** An argument is out of range or of the wrong kind (seed, length, sampling options). */
export class UsageError extends RnnxError {}
