//! TEMPORARY shim so the core compiles before the tokenizer branch merges. Not committed.
use crate::error::{Error, Result};
use std::path::Path;
pub struct Tokenizer(tokenizers::Tokenizer, Vec<u32>);
impl Tokenizer {
    pub fn from_model_dir(dir: &Path) -> Result<Tokenizer> {
        let t = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(Tokenizer(t, vec![2]))
    }
    pub fn encode(&self, text: &str, add: bool) -> Result<Vec<u32>> {
        Ok(self
            .0
            .encode(text, add)
            .map_err(|e| Error::Tokenizer(e.to_string()))?
            .get_ids()
            .to_vec())
    }
    pub fn decode(&self, ids: &[u32], skip: bool, _s: bool) -> Result<String> {
        self.0
            .decode(ids, skip)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }
    pub fn generation_eos_token_ids(&self) -> Vec<u32> {
        self.1.clone()
    }
}
