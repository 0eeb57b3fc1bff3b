@0xa2adf4eb33c7b2e5;
# Every peer-to-peer message of parley, as one union inside a versioned envelope.
#
# One Envelope is one Noise payload (a handshake payload or one transport message). A payload
# too large for one transport message travels as Chunk envelopes whose data, reassembled, is
# itself one Envelope. schemas/codec.py decodes strictly: an unknown union tag, a version other
# than 1, an out-of-range size or a traversal-limit violation is the peer's protocol error.
#
# Field ordinals are wire format: append new fields, never renumber.

struct Envelope {
  version @0 :UInt16;
  body :union {
    hello @1 :Hello;
    weightsBundle @2 :WeightsBundle;
    # Ordinals 3 and 4 held RoundOffer and RoundResult, planned and never sent: FL rounds
    # exchange bundles inside the handshake (docs/design.md, "Federated learning"). Retired,
    # never reused; decoding one is the peer's protocol error.
    retired3 @3 :Void;
    retired4 @4 :Void;
    callStart @5 :CallStart;
    codecFrames @6 :CodecFrames;
    caption @7 :Caption;
    callEnd @8 :CallEnd;
    ping @9 :Ping;
    pong @10 :Pong;
    bye @11 :Bye;
    chunk @12 :Chunk;
    # Session control, never seen above handshake/: the sender's outbound key moves to
    # epoch `epoch` right after this message.
    rekey @13 :Rekey;
    # Handshake message 3 or the responder's first transport message without weights
    # (the sender does not trust the receiver with them).
    noBundle @14 :Void;
  }
}

struct Hello {
  protocolVersion @0 :UInt16;
  capabilities @1 :List(Text);
  codecArchitecture @2 :Text;
  codecVersionHash @3 :Data;
}

enum TensorDtype {
  float32 @0;
  float16 @1;
  int8 @2;
}

struct TensorBlob {
  name @0 :Text;
  shape @1 :List(UInt32);
  dtype @2 :TensorDtype;
  scale @3 :Float64;
  zeroPoint @4 :Float64;
  data @5 :Data;
}

struct WeightsBundle {
  architectureId @0 :Text;
  round @1 :UInt64;
  sampleCount @2 :UInt64;
  compression @3 :Text;
  tensors @4 :List(TensorBlob);
  contentHash @5 :Data;
}

struct CodecSettings {
  architectureId @0 :Text;
  codecVersionHash @1 :Data;
  latentDim @2 :UInt32;
  latentBits @3 :UInt8;
  frameRateHz @4 :Float64;
}

struct VoiceTraits {
  medianPitchHz @0 :Float64;
  speakingRateWps @1 :Float64;
}

struct CallStart {
  callId @0 :UInt64;
  speakerLanguage @1 :Text;
  listenerLanguage @2 :Text;
  codec @3 :CodecSettings;
  voice @4 :VoiceTraits;
}

struct CodecFrames {
  seq @0 :UInt64;
  startTimeS @1 :Float64;
  frameCount @2 :UInt32;
  payload @3 :Data;
  # Appended (issue 16): the sender's voice-activity detector heard speech start / end within
  # this message's audio. Advisory: the listener keeps its own VAD. Old senders leave both false.
  speechStart @4 :Bool;
  speechEnd @5 :Bool;
}

struct WordTime {
  word @0 :Text;
  startS @1 :Float64;
  endS @2 :Float64;
}

struct Caption {
  seq @0 :UInt64;
  startS @1 :Float64;
  endS @2 :Float64;
  text @3 :Text;
  language @4 :Text;
  final @5 :Bool;
  words @6 :List(WordTime);
  voice @7 :VoiceTraits;
}

struct CallEnd {
  callId @0 :UInt64;
  reason @1 :Text;
  # The listener's per-stage latency summary (JSON object), sent with its final CallEnd.
  summaryJson @2 :Text;
}

struct Ping {
  nonce @0 :UInt64;
}

struct Pong {
  nonce @0 :UInt64;
}

struct Bye {
  # A ByeReason value (schemas/messages.py); kept as an integer so that a newer peer's reason
  # is reported as an error naming the number, not silently mapped.
  reason @0 :UInt16;
}

struct Chunk {
  messageId @0 :UInt32;
  index @1 :UInt32;
  count @2 :UInt32;
  data @3 :Data;
}

struct Rekey {
  epoch @0 :UInt32;
}
