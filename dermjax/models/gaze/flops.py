"""Analytic FLOPs of a gaze train step (the MFU reference; XLA counts a scan body once)."""


def gaze_train_flops(image_size: int, timesteps: int, *, freeze_encoder: bool = True,
                     decoder: bool = True) -> float:
  """Analytic FLOPs per image of one gaze-model train step (2 per multiply-add).

  Convolutions and dense layers of dermjax.models.gaze with the "gap" head: forward of
  everything, plus backward (2x forward) of the trainable part; the frozen encoder runs
  forward only. XLA's cost analysis counts a while loop's body once, so for the scanned
  Attentive ConvLSTM it reports fewer FLOPs than run; this count is the reference.
  """
  def conv(h, cin, cout, k=3):
    return 2.0 * h * h * cin * cout * k * k

  s, t = int(image_size), int(timesteps)
  encoder = (conv(s, 3, 64) + conv(s, 64, 64) + conv(s // 2, 64, 128) + conv(s // 2, 128, 128)
             + conv(s // 4, 128, 256) + 2 * conv(s // 4, 256, 256))
  h = s // 8
  lstm_step = conv(h, 256, 256) + conv(h, 256, 1) + 2 * conv(h, 256, 1024)
  lstm = conv(h, 256, 256) + t * lstm_step
  decoder_step = (2 * conv(s // 4, 256, 256) + conv(s // 4, 256, 128) + conv(s // 2, 128, 128)
                  + conv(s // 2, 128, 64) + conv(s, 64, 64) + conv(s, 64, 1)
                  + 2.0 * (448 * 224 + 224 * 6)) if decoder else 0.0
  diagnosis = conv(h, 256, 512) + 2 * conv(h, 512, 512) + 3 * conv(h // 2, 512, 512)
  trainable = lstm + t * decoder_step + diagnosis + (0.0 if freeze_encoder else encoder)
  return (encoder if freeze_encoder else 0.0) + 3 * trainable
