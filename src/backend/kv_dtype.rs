//! The KV cache's element type, as vLLM's `--kv-cache-dtype` names it: the
//! weight dtypes plus the two FP8 formats (stored with a per-tensor scale).

use super::fp8::Fp8Format;
use super::DType;

/// Element type of a KV pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvDType {
    F32,
    F16,
    BF16,
    Fp8(Fp8Format),
}

impl KvDType {
    /// What `--kv-cache-dtype` accepts, for error messages.
    pub const ACCEPTED: &'static str =
        "auto, float32, bfloat16, float16, fp8, fp8_e4m3 or fp8_e5m2";

    /// Parses a named KV dtype (`auto` is resolved elsewhere): the weight
    /// dtype names, `fp8` (= `fp8_e4m3`, as vLLM), `fp8_e4m3`, `fp8_e5m2`.
    pub fn parse(name: &str) -> Option<KvDType> {
        match name.trim().to_ascii_lowercase().as_str() {
            "fp8" | "fp8_e4m3" => Some(KvDType::Fp8(Fp8Format::E4M3)),
            "fp8_e5m2" => Some(KvDType::Fp8(Fp8Format::E5M2)),
            other => DType::parse(other).map(KvDType::from),
        }
    }

    pub fn size_in_bytes(self) -> usize {
        match self {
            KvDType::F32 => 4,
            KvDType::F16 | KvDType::BF16 => 2,
            KvDType::Fp8(_) => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KvDType::F32 => "float32",
            KvDType::F16 => "float16",
            KvDType::BF16 => "bfloat16",
            KvDType::Fp8(Fp8Format::E4M3) => "fp8_e4m3",
            KvDType::Fp8(Fp8Format::E5M2) => "fp8_e5m2",
        }
    }
}

impl From<DType> for KvDType {
    fn from(dtype: DType) -> KvDType {
        match dtype {
            DType::F32 => KvDType::F32,
            DType::F16 => KvDType::F16,
            DType::BF16 => KvDType::BF16,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_vllm() {
        let e4m3 = Some(KvDType::Fp8(Fp8Format::E4M3));
        assert_eq!(KvDType::parse("fp8"), e4m3);
        assert_eq!(KvDType::parse("FP8_E4M3"), e4m3);
        assert_eq!(
            KvDType::parse("fp8_e5m2"),
            Some(KvDType::Fp8(Fp8Format::E5M2))
        );
        assert_eq!(KvDType::parse("half"), Some(KvDType::F16));
        assert_eq!(KvDType::parse("fp8_e3m4"), None);
        for d in [KvDType::F32, KvDType::BF16, KvDType::Fp8(Fp8Format::E5M2)] {
            assert_eq!(KvDType::parse(d.name()), Some(d));
        }
        assert_eq!(KvDType::parse("fp8").unwrap().size_in_bytes(), 1);
    }
}
